"""Stripe's published API example objects, for the local Stripe server.

Copied unchanged from stripe/openapi ``openapi/fixtures3.json`` -> ``resources`` at commit
f6c2a48fbac2819d1feba8143d942ffc65e1c0d2 (tag v2436), with the top-level body
parameters of ``POST /v1/checkout/sessions`` from ``openapi/spec3.json``. The values are
documentation placeholders; the server overwrites the fields it gives meaning to.
"""

from __future__ import annotations

import json
from typing import Any

SOURCE_COMMIT = "f6c2a48fbac2819d1feba8143d942ffc65e1c0d2"

OBJECTS: dict[str, dict[str, Any]] = json.loads(r"""
{
 "checkout.session": {
  "after_expiration": {
   "recovery": {
    "allow_promotion_codes": true,
    "enabled": true,
    "expires_at": null,
    "url": null
   }
  },
  "allow_promotion_codes": null,
  "amount_subtotal": null,
  "amount_total": null,
  "automatic_tax": {
   "enabled": false,
   "liability": {
    "type": "account"
   },
   "status": null,
   "provider": null
  },
  "billing_address_collection": null,
  "cancel_url": "https://example.com/cancel",
  "client_reference_id": null,
  "client_secret": null,
  "consent": {
   "promotions": null,
   "terms_of_service": null
  },
  "consent_collection": {
   "payment_method_reuse_agreement": {
    "position": "hidden"
   },
   "promotions": null,
   "terms_of_service": null
  },
  "created": 1234567890,
  "currency": null,
  "custom_fields": [],
  "custom_text": {
   "after_submit": {
    "message": "message"
   },
   "shipping_address": {
    "message": "message"
   },
   "submit": {
    "message": "message"
   },
   "terms_of_service_acceptance": {
    "message": "message"
   }
  },
  "customer": null,
  "customer_creation": null,
  "customer_details": {
   "address": {
    "city": null,
    "country": null,
    "line1": null,
    "line2": null,
    "postal_code": null,
    "state": null
   },
   "email": "example@example.com",
   "name": null,
   "phone": null,
   "tax_exempt": "none",
   "tax_ids": null,
   "business_name": null,
   "individual_name": null
  },
  "customer_email": null,
  "expires_at": 1234567890,
  "id": "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY",
  "invoice": null,
  "invoice_creation": {
   "enabled": true,
   "invoice_data": {
    "account_tax_ids": null,
    "custom_fields": null,
    "description": null,
    "footer": null,
    "issuer": {
     "type": "account"
    },
    "metadata": null,
    "rendering_options": {
     "amount_tax_display": null,
     "template": null
    }
   }
  },
  "livemode": false,
  "locale": null,
  "metadata": {},
  "mode": "payment",
  "object": "checkout.session",
  "payment_intent": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
  "payment_link": null,
  "payment_method_collection": null,
  "payment_method_configuration_details": {
   "id": "obj_123",
   "parent": null
  },
  "payment_method_options": {},
  "payment_method_types": [
   "card"
  ],
  "payment_status": "unpaid",
  "phone_number_collection": {
   "enabled": false
  },
  "recovered_from": null,
  "saved_payment_method_options": {
   "allow_redisplay_filters": null,
   "payment_method_remove": null,
   "payment_method_save": null
  },
  "setup_intent": null,
  "shipping_address_collection": {
   "allowed_countries": [
    "SC"
   ]
  },
  "shipping_cost": {
   "amount_subtotal": 1555417355,
   "amount_tax": 1424534716,
   "amount_total": 1117121693,
   "shipping_rate": null
  },
  "shipping_options": [],
  "status": "open",
  "submit_type": null,
  "subscription": null,
  "success_url": "https://example.com/success",
  "total_details": {
   "amount_discount": 406046392,
   "amount_shipping": null,
   "amount_tax": 1424534716
  },
  "ui_mode": null,
  "url": "https://checkout.stripe.com/pay/c/cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY",
  "adaptive_pricing": {
   "enabled": true
  },
  "discounts": null,
  "collected_information": {
   "shipping_details": {
    "address": {
     "city": null,
     "country": null,
     "line1": null,
     "line2": null,
     "postal_code": null,
     "state": null
    },
    "name": "name"
   },
   "business_name": null,
   "individual_name": null
  },
  "permissions": {
   "update_shipping_details": null
  },
  "wallet_options": {},
  "origin_context": null,
  "currency_conversion": {
   "amount_subtotal": 1555417355,
   "amount_total": 1117121693,
   "fx_rate": "291452898",
   "source_currency": "usd"
  },
  "customer_account": null,
  "integration_identifier": null,
  "managed_payments": {
   "enabled": true
  }
 },
 "event": {
  "api_version": null,
  "created": 1234567890,
  "data": {
   "object": {
    "active": true,
    "aggregate_usage": null,
    "amount": 2000,
    "amount_decimal": "2000",
    "billing_scheme": "per_unit",
    "created": 1721948530,
    "currency": "usd",
    "id": "price_1PgafmB7WZ01zgkW6dKueIc5",
    "interval": "month",
    "interval_count": 1,
    "livemode": false,
    "metadata": {},
    "meter": null,
    "nickname": null,
    "object": "plan",
    "product": "prod_QXg1hqf4jFNsqG",
    "tiers_mode": null,
    "transform_usage": null,
    "trial_period_days": null,
    "usage_type": "licensed"
   }
  },
  "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
  "livemode": false,
  "object": "event",
  "pending_webhooks": 0,
  "request": {
   "id": null,
   "idempotency_key": null
  },
  "type": "plan.created"
 },
 "subscription": {
  "application": null,
  "application_fee_percent": null,
  "automatic_tax": {
   "enabled": false,
   "liability": {
    "type": "account"
   },
   "disabled_reason": null
  },
  "billing_cycle_anchor": 1234567890,
  "billing_cycle_anchor_config": {
   "day_of_month": 1361669285,
   "hour": null,
   "minute": null,
   "month": null,
   "second": null
  },
  "cancel_at": 1234567890,
  "canceled_at": 1234567890,
  "cancellation_details": {
   "comment": null,
   "feedback": null,
   "reason": null
  },
  "collection_method": "charge_automatically",
  "created": 1234567890,
  "currency": "usd",
  "customer": "cus_QXg1o8vcGmoR32",
  "days_until_due": null,
  "default_payment_method": null,
  "default_source": null,
  "default_tax_rates": [],
  "description": null,
  "discounts": [],
  "ended_at": 1234567890,
  "id": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
  "invoice_settings": {
   "account_tax_ids": null,
   "issuer": {
    "type": "self"
   },
   "custom_fields": null,
   "description": null,
   "footer": null
  },
  "items": {
   "data": [
    {
     "created": 1721954054,
     "discounts": [],
     "id": "si_QXhVnC2h0Jczwc",
     "metadata": {},
     "object": "subscription_item",
     "price": {
      "active": true,
      "billing_scheme": "per_unit",
      "created": 1721948530,
      "currency": "usd",
      "custom_unit_amount": {
       "maximum": null,
       "minimum": null,
       "preset": null
      },
      "id": "price_1PgafmB7WZ01zgkW6dKueIc5",
      "livemode": false,
      "lookup_key": null,
      "metadata": {},
      "nickname": null,
      "object": "price",
      "product": "prod_QXg1hqf4jFNsqG",
      "recurring": {
       "interval": "month",
       "interval_count": 1,
       "meter": null,
       "usage_type": "licensed",
       "trial_period_days": null
      },
      "tax_behavior": "unspecified",
      "tiers_mode": null,
      "transform_quantity": {
       "divide_by": 1592560163,
       "round": "down"
      },
      "type": "recurring",
      "unit_amount": 2000,
      "unit_amount_decimal": "2000"
     },
     "quantity": 1,
     "subscription": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
     "tax_rates": [],
     "plan": {
      "active": true,
      "amount": null,
      "amount_decimal": null,
      "billing_scheme": "tiered",
      "created": 1028554472,
      "currency": "currency",
      "id": "obj_123",
      "interval": "month",
      "interval_count": 797691627,
      "livemode": true,
      "metadata": null,
      "meter": null,
      "nickname": null,
      "object": "plan",
      "product": null,
      "tiers_mode": null,
      "transform_usage": {
       "divide_by": 1592560163,
       "round": "down"
      },
      "trial_period_days": null,
      "usage_type": "licensed"
     },
     "current_period_end": 976287773,
     "current_period_start": 1896570518,
     "billing_thresholds": {
      "usage_gte": null
     }
    }
   ],
   "has_more": false,
   "object": "list",
   "url": "/v1/subscription_items?subscription=sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
  },
  "latest_invoice": null,
  "livemode": false,
  "metadata": {},
  "next_pending_invoice_item_invoice": 1234567890,
  "object": "subscription",
  "on_behalf_of": null,
  "pause_collection": {
   "behavior": "mark_uncollectible",
   "resumes_at": null
  },
  "payment_settings": {
   "payment_method_options": {
    "acss_debit": {},
    "bancontact": {
     "preferred_language": "fr"
    },
    "card": {
     "network": null,
     "request_three_d_secure": null
    },
    "customer_balance": {
     "funding_type": null
    },
    "konbini": {},
    "sepa_debit": {},
    "us_bank_account": {},
    "payto": {},
    "pix": {},
    "upi": {}
   },
   "payment_method_types": null,
   "save_default_payment_method": null
  },
  "pending_invoice_item_interval": {
   "interval": "month",
   "interval_count": 797691627
  },
  "pending_setup_intent": null,
  "pending_update": {
   "billing_cycle_anchor": null,
   "discount": {
    "checkout_session": null,
    "customer": null,
    "end": null,
    "id": "obj_123",
    "invoice": null,
    "invoice_item": null,
    "object": "discount",
    "promotion_code": null,
    "start": 109757538,
    "subscription": null,
    "subscription_item": null,
    "source": {
     "coupon": null,
     "type": "coupon"
    },
    "customer_account": null
   },
   "discounts": [],
   "expires_at": 833811170,
   "subscription_items": null,
   "trial_end": null,
   "trial_from_plan": null,
   "metadata": null
  },
  "schedule": null,
  "start_date": 1234567890,
  "status": "active",
  "test_clock": null,
  "transfer_data": {
   "amount_percent": null,
   "destination": {
    "id": "obj_123",
    "object": "account"
   }
  },
  "trial_end": 1234567890,
  "trial_settings": {
   "end_behavior": {
    "missing_payment_method": "create_invoice"
   }
  },
  "trial_start": 1234567890,
  "cancel_at_period_end": true,
  "billing_thresholds": {
   "amount_gte": null,
   "reset_billing_cycle_anchor": null
  },
  "billing_mode": {
   "type": "classic",
   "flexible": {}
  },
  "customer_account": null,
  "managed_payments": {
   "enabled": true
  },
  "billing_schedules": [
   {
    "applies_to": null,
    "bill_until": {
     "computed_timestamp": 2082605468,
     "duration": {
      "interval": "month",
      "interval_count": null
     },
     "timestamp": null,
     "type": "duration"
    },
    "key": "key"
   }
  ]
 },
 "charge": {
  "amount": 100,
  "amount_captured": 0,
  "amount_refunded": 0,
  "application": null,
  "application_fee": null,
  "application_fee_amount": null,
  "balance_transaction": "txn_1PgaxNB7WZ01zgkWEV3TLf40",
  "billing_details": {
   "address": {
    "city": null,
    "country": null,
    "line1": null,
    "line2": null,
    "postal_code": null,
    "state": null
   },
   "email": null,
   "name": "Jenny Rosen",
   "phone": null,
   "tax_id": null
  },
  "calculated_statement_descriptor": null,
  "captured": false,
  "created": 1234567890,
  "currency": "usd",
  "customer": null,
  "description": "My First Test Charge (created for API docs)",
  "disputed": false,
  "failure_balance_transaction": null,
  "failure_code": null,
  "failure_message": null,
  "fraud_details": {},
  "id": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
  "livemode": false,
  "metadata": {},
  "object": "charge",
  "on_behalf_of": null,
  "outcome": {
   "advice_code": null,
   "network_advice_code": null,
   "network_decline_code": null,
   "network_status": null,
   "reason": null,
   "seller_message": null,
   "type": "type"
  },
  "paid": true,
  "payment_intent": null,
  "payment_method": "card_1PgaftB7WZ01zgkWm3waTcFp",
  "payment_method_details": {
   "card": {
    "amount_authorized": null,
    "brand": "visa",
    "checks": {
     "address_line1_check": null,
     "address_postal_code_check": null,
     "cvc_check": "pass"
    },
    "country": "US",
    "exp_month": 8,
    "exp_year": 2030,
    "extended_authorization": {
     "status": "disabled"
    },
    "fingerprint": "AOB934RVNwzk6xtn",
    "funding": "credit",
    "incremental_authorization": {
     "status": "unavailable"
    },
    "installments": {
     "plan": {
      "count": null,
      "interval": null,
      "type": "fixed_count"
     }
    },
    "last4": "4242",
    "mandate": null,
    "multicapture": {
     "status": "unavailable"
    },
    "network": "visa",
    "network_token": {
     "used": false
    },
    "overcapture": {
     "maximum_amount_capturable": 100,
     "status": "unavailable"
    },
    "three_d_secure": {
     "authentication_flow": null,
     "electronic_commerce_indicator": null,
     "exemption_indicator": null,
     "result": null,
     "result_reason": null,
     "transaction_id": null,
     "version": null
    },
    "wallet": {
     "dynamic_last4": null,
     "type": "link"
    },
    "authorization_code": null,
    "regulated_status": null,
    "network_transaction_id": null,
    "transaction_link_id": null
   },
   "type": "card"
  },
  "receipt_email": null,
  "receipt_number": null,
  "receipt_url": "https://sangeekp-15t6ai--manage-mydev.dev.stripe.me/receipts/payment/CAcaFwoVYWNjdF8xUGdhZlRCN1daMDF6Z2tXKI_ei7UGMgZv2S_KfiY6LCJrxC7awazgQA9I88krZKw5uuCkZ5Nup2tomEtAbSpdfzjVZHO3ZYP5KFZP",
  "refunded": false,
  "refunds": {
   "data": [],
   "has_more": false,
   "object": "list",
   "url": "/v1/charges/ch_1PgafuB7WZ01zgkWXYmPNZs8/refunds"
  },
  "review": null,
  "shipping": {},
  "source_transfer": null,
  "statement_descriptor": null,
  "statement_descriptor_suffix": null,
  "status": "succeeded",
  "transfer_data": {
   "amount": null,
   "destination": {
    "id": "obj_123",
    "object": "account"
   }
  },
  "transfer_group": null,
  "source": {
   "allow_redisplay": null,
   "amount": null,
   "client_secret": "client_secret",
   "created": 1028554472,
   "currency": null,
   "flow": "flow",
   "id": "obj_123",
   "livemode": true,
   "metadata": null,
   "object": "source",
   "owner": {
    "address": {
     "city": null,
     "country": null,
     "line1": null,
     "line2": null,
     "postal_code": null,
     "state": null
    },
    "email": null,
    "name": null,
    "phone": null,
    "verified_address": {
     "city": null,
     "country": null,
     "line1": null,
     "line2": null,
     "postal_code": null,
     "state": null
    },
    "verified_email": null,
    "verified_name": null,
    "verified_phone": null
   },
   "statement_descriptor": null,
   "status": "status",
   "type": "ach_credit_transfer",
   "usage": null
  }
 }
}
""")

CHECKOUT_SESSION_CREATE_PARAMS: frozenset[str] = frozenset(
    {
        "adaptive_pricing",
        "after_expiration",
        "allow_promotion_codes",
        "automatic_tax",
        "billing_address_collection",
        "branding_settings",
        "cancel_url",
        "client_reference_id",
        "consent_collection",
        "currency",
        "custom_fields",
        "custom_text",
        "customer",
        "customer_account",
        "customer_creation",
        "customer_email",
        "customer_update",
        "discounts",
        "excluded_payment_method_types",
        "expand",
        "expires_at",
        "integration_identifier",
        "invoice_creation",
        "line_items",
        "locale",
        "managed_payments",
        "metadata",
        "mode",
        "name_collection",
        "optional_items",
        "origin_context",
        "payment_intent_data",
        "payment_method_collection",
        "payment_method_configuration",
        "payment_method_data",
        "payment_method_options",
        "payment_method_types",
        "permissions",
        "phone_number_collection",
        "redirect_on_completion",
        "return_url",
        "saved_payment_method_options",
        "setup_intent_data",
        "shipping_address_collection",
        "shipping_options",
        "submit_type",
        "subscription_data",
        "success_url",
        "tax_id_collection",
        "ui_mode",
        "wallet_options",
    }
)
