"""Validation of a raw dataset: Great Expectations suites over the manifest plus media checks GX cannot do."""
