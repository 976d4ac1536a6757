"""Clients for the cifar10-service HTTP API: `from clients import Client`. No torch, no training code."""
from .client import Client, Explanation, Prediction, Score, ServiceError, ServiceUnreachable

__all__ = ["Client", "Explanation", "Prediction", "Score", "ServiceError", "ServiceUnreachable"]
