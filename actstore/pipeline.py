"""Deprecated home of the capture run: it lives in :mod:`actstore.capture` (``capture.run``,
``capture.planning``, ``capture.cluster``); these names are importable from here as before."""

from .capture import CaptureReport, CaptureRequest, capture_on_cluster, capture_request, capture_to_store, format_texts

__all__ = ["CaptureReport", "CaptureRequest", "capture_on_cluster", "capture_request", "capture_to_store",
           "format_texts"]
