"""The Stripe webhook endpoint: the raw body and signature go to the core's handler."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nasca_core._errors import CheckoutError, ConfigurationError, SignatureError, StoreError, WebhookError
from nasca_core.server._context import Context

log = logging.getLogger("nasca.server")


class WebhookRoutes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [Route("/stripe/webhook", self.webhook, methods=["POST"], name="stripe_webhook")]

    async def webhook(self, request: Request) -> Response:
        """200 with what was done; 400 for a bad signature or payload (Stripe does not
        retry those); 500 when the store is down or no secret is set (Stripe retries)."""
        limit = self.ctx.settings.max_body_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            return self.ctx.json({"error": "payload too large"}, 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return self.ctx.json({"error": "payload too large"}, 413)
        try:
            signature = request.headers.get("stripe-signature")
            result = await self.ctx.nasca.billing.ahandle_stripe_webhook(body, signature)
        except SignatureError:
            return self.ctx.json({"error": "invalid signature"}, 400)
        except WebhookError as exc:
            log.warning("nasca: rejected a Stripe webhook: %s", exc)
            return self.ctx.json({"error": str(exc)}, 400)
        except StoreError:
            log.exception("nasca: store unavailable while handling a Stripe webhook")
            return self.ctx.json({"error": "store unavailable"}, 500)
        except CheckoutError:  # Stripe did not answer the re-read: Stripe retries the event
            log.exception("nasca: Stripe unreachable while handling a Stripe webhook")
            return self.ctx.json({"error": "stripe unavailable"}, 500)
        except ConfigurationError:
            log.exception("nasca: Stripe webhooks are not configured")
            return self.ctx.json({"error": "webhooks are not configured"}, 500)
        return self.ctx.json(result.model_dump(mode="json"))
