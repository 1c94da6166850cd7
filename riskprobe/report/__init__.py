"""Report: plots, dynamic profiles and hypotheses, and the Markdown report built from fit runs and harvests."""

from .build import write_report

__all__ = ["write_report"]
