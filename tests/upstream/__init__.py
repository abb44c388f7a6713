"""Transformers' own common tests (ModelTesterMixin, ConfigTester, ...) run against TerraMind."""
