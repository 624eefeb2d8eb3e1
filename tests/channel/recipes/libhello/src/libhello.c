/* The install prefix is compiled in: conda records a binary placeholder. */
static const char compiled_prefix[] = PREFIX_STR;
const char *hello_lib_prefix(void) { return compiled_prefix; }
