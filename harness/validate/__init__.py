"""Validators: pure functions that turn captured guest artefacts (ACPI tables, DTBs, logs) into findings."""
