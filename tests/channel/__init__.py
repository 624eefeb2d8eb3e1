"""The offline test channel builder (tests.channel.testchannel)."""
