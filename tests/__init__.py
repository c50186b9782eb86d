"""The test suite, a package so that its helper modules load once, as `tests.…`."""
