"""Ingest: signed readings from MQTT to the store, acknowledged after the commit, and their 15-minute intervals."""
