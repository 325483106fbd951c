"""Wire formats shared by host and guest.

Every decoder here treats its input as hostile: sizes are capped before anything is allocated,
every field is checked against a declarative table right after decoding, and any violation
raises ``ProtocolError``. The guest agent imports this package, so it uses the standard library
only.
"""
