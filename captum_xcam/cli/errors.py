r"""The command line's own error: a wrong input, told in one line."""


class CliError(Exception):
    r"""A user error: ``captum-xcam`` prints ``error: <message>`` on one line,
    without a traceback, and exits with status 1."""
