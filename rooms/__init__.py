"""Offerings, availability, rooms, seats, presence, signaling and metering."""
