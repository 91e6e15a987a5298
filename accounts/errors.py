class AccountsError(Exception):
    """A refused action in accounts; the message is written for the person who asked."""


class InvalidTransition(AccountsError):
    pass
