"""Shared test parts: certificates made in the test, real upstream servers, an in-process proxy."""
