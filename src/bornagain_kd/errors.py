"""Errors a user can cause and fix: one clear message, never a deep stack trace."""


class UserError(ValueError):
    """A problem with the user's input (path, config value, file, model choice).

    The message names the problem and says how to fix it. The CLI prints it as
    one line and exits with status 2.
    """


def describe(error: BaseException, limit: int = 200) -> str:
    """"Type: first line of the message" of an exception from code we do not own (a user's module, a file
    parser, torch.compile), for a one-line UserError."""
    first = (str(error).strip().splitlines() or [""])[0][:limit]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class RenamedKeyWarning(FutureWarning):
    """A config key given under its old name: it still works, and the message names the new one."""
