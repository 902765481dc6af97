"""Errors a user can cause and fix: one clear message, never a deep stack trace."""


class UserError(ValueError):
    """A problem with the user's input (path, config value, file, model choice).

    The message names the problem and says how to fix it. The CLI prints it as
    one line and exits with status 2.
    """


class RenamedKeyWarning(FutureWarning):
    """A config key given under its old name: it still works, and the message names the new one."""
