"""The work of each stage, as plain functions over paths and records (callable without Prefect)."""
