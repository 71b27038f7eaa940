"""Test-wide settings: every job run by the tests, doctests and notebooks checks that each
operator accounts for its rows (``Result.check_accounting``)."""

import os

os.environ["SABOT_LAB_CHECK_ACCOUNTING"] = "1"
