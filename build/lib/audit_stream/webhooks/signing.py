"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

During a secret rotation the message is signed with both secrets, so the
receiver accepts it whichever secret it holds; ``standardwebhooks`` verifies a
header that carries several space-separated signatures.
"""

from __future__ import annotations

from datetime import datetime

from standardwebhooks.webhooks import Webhook

__all__ = ["headers"]


def headers(webhook_id: str, timestamp: datetime, body: str, secrets: list[str]) -> dict[str, str]:
    """The headers of one signed request."""
    signatures = " ".join(Webhook(secret).sign(webhook_id, timestamp, body) for secret in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }
