/* Prints its compiled prefix (binary placeholder), the text file it reads from
 * that prefix (text placeholder) and libhello's prefix (found through RPATH). */
#include <stdio.h>
#include <string.h>
const char *hello_lib_prefix(void);
static const char compiled_prefix[] = PREFIX_STR;
int main(int argc, char **argv) {
    char path[4096], line[4096];
    printf("prefix=%s\n", compiled_prefix);
    printf("lib=%s\n", hello_lib_prefix());
    snprintf(path, sizeof path, "%s/etc/hello.conf", compiled_prefix);
    FILE *f = fopen(path, "r");
    if (!f) { printf("conf=MISSING %s\n", path); return 3; }
    while (fgets(line, sizeof line, f)) printf("conf:%s", line);
    fclose(f);
    return 0;
}
