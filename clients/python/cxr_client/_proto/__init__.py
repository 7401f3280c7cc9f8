"""Generated at build time from the repository's protos/ (stubs.py); nothing here but this file is committed."""
