"""Data for sabot_lab: deterministic synthetic market data and small real public data sets.

Synthetic (generated in code, see :mod:`sabot_lab.datasets.market`): :func:`securities`,
:func:`security_versions`, :func:`quotes`, :func:`quotes_batch`, :func:`quote_batches`.
Real (bundled files in the repository's ``datasets/`` folder, see
:mod:`sabot_lab.datasets.public`): :func:`flights`, :func:`airports`,
:func:`sp500_constituents`, located by :func:`data_dir`.
Synthetic device heartbeats with silences (see :mod:`sabot_lab.datasets.heartbeats`):
:func:`heartbeats`. Synthetic card transactions with labelled fraud (see
:mod:`sabot_lab.datasets.transactions`):
:func:`accounts`, :func:`transactions`, :func:`transaction_batches`.

Examples
--------
>>> from sabot_lab.datasets import quotes, securities
>>> quotes(1_000).num_rows, securities(100).num_rows
(1000, 100)
"""

from sabot_lab.datasets.clicks import click_batches, clicks, clicks_batch
from sabot_lab.datasets.heartbeats import heartbeats
from sabot_lab.datasets.logs import apache_log_lines, apache_logs, parse_combined_log
from sabot_lab.datasets.market import (
    quote_batches,
    quotes,
    quotes_batch,
    securities,
    security_versions,
)
from sabot_lab.datasets.public import airports, data_dir, flights, sp500_constituents
from sabot_lab.datasets.taxi import taxi_trips
from sabot_lab.datasets.transactions import accounts, transaction_batches, transactions

__all__ = [
    "accounts",
    "airports",
    "apache_log_lines",
    "apache_logs",
    "click_batches",
    "clicks",
    "clicks_batch",
    "data_dir",
    "flights",
    "heartbeats",
    "parse_combined_log",
    "quote_batches",
    "quotes",
    "quotes_batch",
    "securities",
    "security_versions",
    "sp500_constituents",
    "taxi_trips",
    "transaction_batches",
    "transactions",
]
