"""Runners: LocalRunner (this process); DaskRunner comes with the Dask runtime."""
