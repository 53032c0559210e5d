"""Stages 5-7, upload, volume, boot: Glance, Cinder, Nova (the only openstacksdk user),
and write-volume."""
