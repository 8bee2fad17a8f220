"""Load the demo's tiers, regions and markets, and the demo provider's endpoints.

Safe to run again: it finds what exists by its natural key and changes nothing already there, so
an operator's edits survive. Run `manage.py demo_data` first for the demo provider's endpoints.
"""

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts.models import Org, User
from marketplace.models import Market, ModelTier, ProviderEndpoint, Region

DEMO_PROVIDER_SLUG = "demo-provider"
FAKE_PROVIDER_FIRST_PORT = 9101  # one fake provider per tier listens on 127.0.0.1:9101…

# Prices are per 1M billable tokens = the input price; output_weight_bp is the output price as a
# multiple of it (a $5 in / $30 out model: 60,000 bp), cache_weight_bp the cached-input discount.
TIERS = [
    {
        "slug": "economy",
        "name": "Economy",
        "description": "Small open models for bulk, latency-tolerant work: tagging, extraction.",
        "admitted_models": ["llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "gemma-3-12b-it"],
        "min_context_tokens": 32_000,
        "min_output_tokens_per_s": 100,
        "max_ttft_ms": 800,
        "max_output_tokens": 4_096,
        "market": {
            "reference_price_micro": 50_000,  # $0.05 in, $0.20 out
            "tick_micro": 1_000,
            "output_weight_bp": 40_000,
            "cache_weight_bp": 5_000,
            "maker_fee_bp": 0,
            "taker_fee_bp": 20,
        },
        "capacity_tokens_per_day": 20_000_000_000,
    },
    {
        "slug": "standard",
        "name": "Standard",
        "description": "Mid-size open models for chat and retrieval-augmented answers.",
        "admitted_models": ["llama-3.3-70b-instruct", "qwen2.5-72b-instruct", "mistral-small-3"],
        "min_context_tokens": 128_000,
        "min_output_tokens_per_s": 60,
        "max_ttft_ms": 1_000,
        "max_output_tokens": 8_192,
        "market": {
            "reference_price_micro": 300_000,  # $0.30 in, $1.20 out
            "tick_micro": 1_000,
            "output_weight_bp": 40_000,
            "cache_weight_bp": 2_500,
            "maker_fee_bp": 5,
            "taker_fee_bp": 20,
        },
        "capacity_tokens_per_day": 10_000_000_000,
    },
    {
        "slug": "advanced",
        "name": "Advanced",
        "description": "Fast capable models for agents and coding assistants.",
        "admitted_models": ["deepseek-v3", "gpt-5-mini", "claude-haiku-4.5"],
        "min_context_tokens": 128_000,
        "min_output_tokens_per_s": 60,
        "max_ttft_ms": 1_200,
        "max_output_tokens": 16_384,
        "market": {
            "reference_price_micro": 1_000_000,  # $1 in, $5 out
            "tick_micro": 10_000,
            "output_weight_bp": 50_000,
            "cache_weight_bp": 1_000,
            "maker_fee_bp": 10,
            "taker_fee_bp": 25,
        },
        "capacity_tokens_per_day": 5_000_000_000,
    },
    {
        "slug": "premium",
        "name": "Premium",
        "description": "Strong general models for reasoning and long documents.",
        "admitted_models": ["gpt-5", "claude-sonnet-4.5", "gemini-2.5-pro"],
        "min_context_tokens": 200_000,
        "min_output_tokens_per_s": 50,
        "max_ttft_ms": 1_500,
        "max_output_tokens": 32_768,
        "market": {
            "reference_price_micro": 3_000_000,  # $3 in, $15 out
            "tick_micro": 10_000,
            "output_weight_bp": 50_000,
            "cache_weight_bp": 1_000,
            "maker_fee_bp": 10,
            "taker_fee_bp": 25,
        },
        "capacity_tokens_per_day": 2_000_000_000,
    },
    {
        "slug": "frontier",
        "name": "Frontier",
        "description": "The strongest models of the day, priced like them.",
        "admitted_models": ["gpt-5.5", "claude-opus-4.5", "gemini-3-pro"],
        "min_context_tokens": 400_000,
        "min_output_tokens_per_s": 40,
        "max_ttft_ms": 2_000,
        "max_output_tokens": 64_000,
        "market": {
            "reference_price_micro": 5_000_000,  # $5 in, $30 out
            "tick_micro": 10_000,
            "output_weight_bp": 60_000,
            "cache_weight_bp": 1_000,
            "maker_fee_bp": 10,
            "taker_fee_bp": 25,
        },
        "capacity_tokens_per_day": 1_000_000_000,
    },
]

REGIONS = [
    ("na", "North America", "Requests are processed in the United States and Canada."),
    ("eu", "Europe", "Requests are processed and logs kept in the EU (GDPR)."),
    ("sea", "Southeast Asia", "Requests are processed in Singapore, Jakarta or Bangkok."),
    ("me", "Middle East", "Requests are processed in the UAE or Saudi Arabia."),
]

CONTRACT = {
    "lot_tokens": 1_000_000,
    "min_lots": 1,
    "max_lots": 10_000,
    "band_bp": 2_000,  # orders within 20 % of the reference price
    "delivery_days": 30,
    "expiry_policy": Market.ExpiryPolicy.REFUND,
}


class Command(BaseCommand):
    help = "Create the demo tiers, regions and markets and the demo provider's endpoints."

    @transaction.atomic(durable=True)
    def handle(self, *args, **options):
        regions = [
            Region.objects.get_or_create(
                code=code, defaults={"name": name, "residency_note": note}
            )[0]
            for code, name, note in REGIONS
        ]
        provider = Org.objects.filter(slug=DEMO_PROVIDER_SLUG).first()
        verifier = User.objects.filter(is_staff=True).order_by("id").first()
        created = {"tiers": 0, "markets": 0, "endpoints": 0}
        for rank, spec in enumerate(TIERS):
            tier_fields = {
                key: value
                for key, value in spec.items()
                if key not in ("slug", "market", "capacity_tokens_per_day")
            }
            tier, is_new = ModelTier.objects.get_or_create(
                slug=spec["slug"], defaults={**tier_fields, "rank": rank}
            )
            created["tiers"] += is_new
            for region in regions:
                market, is_new = Market.objects.get_or_create(
                    tier=tier,
                    region=region,
                    defaults={
                        "symbol": f"{tier.slug}-{region.code}".upper(),
                        **CONTRACT,
                        **spec["market"],
                    },
                )
                created["markets"] += is_new
                if provider is None:
                    continue
                _, is_new = ProviderEndpoint.objects.get_or_create(
                    org=provider,
                    market=market,
                    base_url=f"http://127.0.0.1:{FAKE_PROVIDER_FIRST_PORT + rank}/v1",
                    defaults={
                        "models": tier.admitted_models[:1],
                        "capacity_tokens_per_day": spec["capacity_tokens_per_day"],
                        "status": ProviderEndpoint.Status.VERIFIED,
                        "verified_by": verifier,
                        "verified_at": timezone.now(),
                    },
                )
                created["endpoints"] += is_new
        self.stdout.write(
            f"Demo markets: {created['tiers']} tiers, {created['markets']} markets and "
            f"{created['endpoints']} endpoints created "
            f"({Market.objects.count()} markets in all)."
        )
        if provider is None:
            self.stdout.write(
                f"No org {DEMO_PROVIDER_SLUG!r} yet: run `manage.py demo_data`, then this again."
            )
