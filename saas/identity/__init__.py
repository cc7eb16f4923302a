"""Global identities: users and their passwords."""
