import factory
from django.utils import timezone

from marketplace.models import Market, ModelTier, ProviderEndpoint, Region


class ModelTierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelTier

    name = factory.Sequence(lambda n: f"Tier {n}")
    slug = factory.Sequence(lambda n: f"tier{n}")
    min_context_tokens = 128_000
    min_output_tokens_per_s = 50
    max_ttft_ms = 1_500
    max_output_tokens = 16_384
    admitted_models = factory.LazyFunction(lambda: ["model-a", "model-b"])


class RegionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Region

    code = factory.Sequence(lambda n: f"r{n}")
    name = factory.Sequence(lambda n: f"Region {n}")


class MarketFactory(factory.django.DjangoModelFactory):
    """$5.00 per 1M, $0.01 tick, lots of 1M tokens, a 20 % band: prices 4.00 to 6.00."""

    class Meta:
        model = Market

    tier = factory.SubFactory(ModelTierFactory)
    region = factory.SubFactory(RegionFactory)
    symbol = factory.Sequence(lambda n: f"TEST{n}-EU")
    lot_tokens = 1_000_000
    tick_micro = 10_000
    min_lots = 2
    max_lots = 100
    reference_price_micro = 5_000_000
    band_bp = 2_000
    output_weight_bp = 60_000
    cache_weight_bp = 1_000
    maker_fee_bp = 10
    taker_fee_bp = 25
    delivery_days = 10


class ProviderEndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProviderEndpoint

    market = factory.SubFactory(MarketFactory)
    base_url = factory.Sequence(lambda n: f"https://provider{n}.example.test/v1")
    models = factory.LazyFunction(lambda: ["model-a"])
    capacity_tokens_per_day = 5_000_000  # x 10 delivery days = 50 lots of 1M
    status = ProviderEndpoint.Status.VERIFIED
    verified_at = factory.LazyFunction(timezone.now)
