"""``fastload bench``: loaders measured side by side under one training step (`run`), the measuring loop
(`measure`), SegNet (`model`), the report (`report`), the peer loaders users run today (`peers`), and storage
latency as a test double (`storage`)."""
