"""The exchange's data: what is traded, who may sell it, the orders and the trades.

Listing
- `ModelTier`: a quality class of inference (floors on context length, speed and time to first
  token, the model names it admits). `Region`: where inference runs (data residency).
- `Market`: one tier in one region, unique per pair, named by a unique `symbol` ("FRONTIER-EU").
  It carries the contract spec every order and trade in it follows: `lot_tokens` billable tokens
  per lot, prices in micro-USD per 1M billable tokens on a `tick_micro` grid within `band_bp` of
  the reference price, `min_lots`..`max_lots` per order, the billable weights, the fees and the
  delivery terms, and its reconciliation terms (a tolerance in bp with a floor in tokens, and
  the grace period for usage reports). `lot_tokens x tick_micro` is a multiple of 1,000,000,
  so the notional of every lot at every allowed price is a whole number of micro-USD and no
  order ever needs rounding.
  `last_sequence` is the matching engine's counter of processed orders; `book_version` is bumped
  by every change to the book made outside the engine (cancel, reduce), so the engine can tell
  that the book it keeps in memory is stale.
- `ProviderEndpoint`: a provider org's declaration that it serves the market's tier, at a base
  URL, with a capacity in tokens per day. Only verified endpoints count towards what the
  provider may sell.

Trading
- `Order`: placed by an org in a market. Inserted `pending` with its hold (bids) in one
  transaction; the market's match task gives it a `sequence` and moves it to `open` (resting),
  `filled`, `expired` or `rejected`; its owner may cancel or reduce it. `0 <= filled_lots <= lots`;
  market orders carry no price and are IOC or FOK; limit orders carry a price; post-only is for
  GTC limit orders only. A bid's `hold_micro` is what it set aside (`hold:order:<id>`); asks hold
  no money. `client_order_id` and `idempotency_key` are unique per org when given.
- `Trade`: one match between a taker and a resting maker, at the maker's price. It records
  both orgs, the lots and tokens, the notional and the buyer's fee; the seller's fee rate is
  charged later, on delivery. A pair of orders trades at most once (a taker meets each maker
  once, when it arrives), so a re-run of the engine cannot write a trade twice.
"""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Mod
from django.db.models.lookups import Exact
from django.utils import timezone

from core.units import BP_PER_UNIT, bp_ceil, cost_floor_micro, div_floor

MICRO_PER_LOT_UNIT = 1_000_000  # lot_tokens x price_micro is divided by this for the notional


def _choices_check(field: str, choices, name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


# Choices live at module level so the models' Meta constraints can name them; each model
# re-exports its own (Market.Status, Order.Side…), which is how the rest of the code spells them.


class MarketStatus(models.TextChoices):
    OPEN = "open", "Open"
    HALTED = "halted", "Halted (book kept, no new orders)"
    CLOSED = "closed", "Closed"


class ExpiryPolicy(models.TextChoices):
    REFUND = "refund", "Refund unused tokens to the buyer"
    FORFEIT = "forfeit", "Unused tokens are paid to the provider"


class EndpointStatus(models.TextChoices):
    PENDING = "pending", "Awaiting verification"
    VERIFIED = "verified", "Verified"
    SUSPENDED = "suspended", "Suspended"


class Side(models.TextChoices):
    BUY = "buy", "Buy (bid)"
    SELL = "sell", "Sell (ask)"


class OrderType(models.TextChoices):
    LIMIT = "limit", "Limit"
    MARKET = "market", "Market"


class TimeInForce(models.TextChoices):
    GTC = "GTC", "Good till cancelled"
    IOC = "IOC", "Immediate or cancel"
    FOK = "FOK", "Fill or kill"


class SelfTradePrevention(models.TextChoices):
    EXPIRE_TAKER = "expire_taker", "Expire the incoming order"
    EXPIRE_MAKER = "expire_maker", "Expire the resting order"
    EXPIRE_BOTH = "expire_both", "Expire both"
    NONE = "none", "Allow self-trades"


class OrderStatus(models.TextChoices):
    PENDING = "pending", "Pending (not matched yet)"
    OPEN = "open", "Open (resting)"
    FILLED = "filled", "Filled"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"
    REJECTED = "rejected", "Rejected"


class ModelTier(models.Model):
    name = models.CharField(max_length=80, unique=True)
    slug = models.SlugField(max_length=40, unique=True)
    description = models.TextField(blank=True)
    rank = models.PositiveSmallIntegerField(
        default=0, help_text="Display order: economy tiers first, frontier last."
    )
    min_context_tokens = models.PositiveIntegerField(help_text="Context window at least this.")
    min_output_tokens_per_s = models.PositiveIntegerField(help_text="Sustained output speed.")
    max_ttft_ms = models.PositiveIntegerField(help_text="Time to first token at most this (ms).")
    max_output_tokens = models.PositiveIntegerField(help_text="Largest completion a request gets.")
    admitted_models = models.JSONField(
        default=list, blank=True, help_text="Model names a provider may serve in this tier."
    )

    class Meta:
        ordering = ["rank", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_context_tokens__gt=0)
                & Q(max_ttft_ms__gt=0)
                & Q(max_output_tokens__gt=0),
                name="model_tier_floors_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def admits(self, model_name: str) -> bool:
        return model_name in self.admitted_models


class Region(models.Model):
    code = models.SlugField(max_length=8, unique=True, help_text='Short code such as "eu".')
    name = models.CharField(max_length=80)
    residency_note = models.TextField(
        blank=True, help_text="Where requests are processed and data is kept."
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Market(models.Model):
    Status = MarketStatus
    ExpiryPolicy = ExpiryPolicy

    tier = models.ForeignKey(ModelTier, on_delete=models.PROTECT, related_name="markets")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="markets")
    symbol = models.CharField(max_length=32, unique=True)
    lot_tokens = models.BigIntegerField(help_text="Billable tokens per lot.")
    tick_micro = models.BigIntegerField(help_text="Price step, micro-USD per 1M billable tokens.")
    min_lots = models.PositiveIntegerField(default=1)
    max_lots = models.PositiveIntegerField()
    reference_price_micro = models.BigIntegerField(
        help_text="List price, micro-USD per 1M billable tokens; the centre of the price band."
    )
    band_bp = models.PositiveIntegerField(
        help_text="How far an order's price may be from the reference price, each way, in bp."
    )
    output_weight_bp = models.PositiveIntegerField(help_text="Billable tokens per output token.")
    cache_weight_bp = models.PositiveIntegerField(help_text="Billable tokens per cached input.")
    maker_fee_bp = models.PositiveIntegerField(default=0)
    taker_fee_bp = models.PositiveIntegerField(default=0)
    delivery_days = models.PositiveIntegerField(help_text="Bought tokens may be used this long.")
    expiry_policy = models.CharField(
        max_length=8, choices=ExpiryPolicy.choices, default=ExpiryPolicy.REFUND
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    # Reconciliation: a pair's hour settles on the primary meter when every other report is
    # within max(floor, primary x bp / 10,000) of it, once the reports' grace has passed.
    reconcile_tolerance_bp = models.PositiveIntegerField(
        default=200, help_text="How far another report may be from the primary meter, in bp."
    )
    reconcile_floor_tokens = models.BigIntegerField(
        default=1_000, help_text="A difference up to this many billable tokens always passes."
    )
    report_grace_minutes = models.PositiveIntegerField(
        default=60, help_text="How long after an hour ends its reports may still arrive."
    )
    last_sequence = models.BigIntegerField(default=0, help_text="Orders the engine has processed.")
    book_version = models.BigIntegerField(
        default=0, help_text="Bumped by every book change made outside the engine."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tier__rank", "region_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tier", "region"], name="market_unique_tier_region"),
            models.CheckConstraint(
                condition=Q(lot_tokens__gt=0) & Q(tick_micro__gt=0),
                name="market_lot_and_tick_positive",
            ),
            models.CheckConstraint(
                condition=Q(min_lots__gt=0) & Q(min_lots__lte=F("max_lots")),
                name="market_min_lots_within_max",
            ),
            # Every lot's notional at every tick is whole micro-USD: no order ever rounds.
            models.CheckConstraint(
                condition=Exact(Mod(F("lot_tokens") * F("tick_micro"), MICRO_PER_LOT_UNIT), 0),
                name="market_lot_notional_whole_micro",
            ),
            models.CheckConstraint(
                condition=Q(reference_price_micro__gt=0)
                & Exact(Mod(F("reference_price_micro"), F("tick_micro")), 0),
                name="market_reference_price_on_tick",
            ),
            models.CheckConstraint(
                condition=Q(band_bp__gt=0) & Q(band_bp__lte=BP_PER_UNIT),
                name="market_band_within_100_percent",
            ),
            models.CheckConstraint(
                condition=Q(maker_fee_bp__lt=BP_PER_UNIT) & Q(taker_fee_bp__lt=BP_PER_UNIT),
                name="market_fees_below_100_percent",
            ),
            models.CheckConstraint(
                condition=Q(output_weight_bp__gt=0) & Q(delivery_days__gt=0),
                name="market_weights_and_delivery_positive",
            ),
            models.CheckConstraint(
                condition=Q(last_sequence__gte=0) & Q(book_version__gte=0),
                name="market_counters_not_negative",
            ),
            _choices_check("status", MarketStatus, "market_status_valid"),
            _choices_check("expiry_policy", ExpiryPolicy, "market_expiry_policy_valid"),
            models.CheckConstraint(
                condition=Q(reconcile_tolerance_bp__lte=BP_PER_UNIT)
                & Q(reconcile_floor_tokens__gte=0)
                & Q(report_grace_minutes__lte=7 * 24 * 60),
                name="market_reconciliation_terms_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.symbol

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN

    @property
    def max_fee_bp(self) -> int:
        return max(self.maker_fee_bp, self.taker_fee_bp)

    @property
    def band_ticks(self) -> int:
        """Whole ticks between the reference price and either edge of the band."""
        width_micro, _ = div_floor(self.reference_price_micro * self.band_bp, BP_PER_UNIT)
        ticks, _ = div_floor(width_micro, self.tick_micro)
        return ticks

    @property
    def band_low_micro(self) -> int:
        """The lowest price an order may carry: on the grid, inside the band, above zero."""
        return max(self.tick_micro, self.reference_price_micro - self.band_ticks * self.tick_micro)

    @property
    def band_high_micro(self) -> int:
        return self.reference_price_micro + self.band_ticks * self.tick_micro

    def notional_micro(self, *, lots: int, price_micro: int) -> int:
        """What `lots` cost at `price_micro`; exact on the tick grid (see the constraint)."""
        return cost_floor_micro(tokens=lots * self.lot_tokens, price_micro_per_m=price_micro)

    def bid_hold_micro(self, *, lots: int, price_micro: int) -> int:
        """Collateral for a bid: the notional at its limit plus the higher fee, rounded up."""
        notional = self.notional_micro(lots=lots, price_micro=price_micro)
        return notional + bp_ceil(notional, self.max_fee_bp)


class ProviderEndpoint(models.Model):
    Status = EndpointStatus

    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="endpoints")
    market = models.ForeignKey(Market, on_delete=models.PROTECT, related_name="endpoints")
    base_url = models.URLField(max_length=500, help_text="OpenAI-compatible base URL (…/v1).")
    capacity_tokens_per_day = models.BigIntegerField(help_text="Billable tokens per day.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Last: from here on `models` in this class body is this field, not django.db.models.
    models = models.JSONField(default=list, help_text="Model names served; the tier admits each.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "market", "base_url"], name="endpoint_unique_org_market_url"
            ),
            models.CheckConstraint(
                condition=Q(capacity_tokens_per_day__gt=0), name="endpoint_capacity_positive"
            ),
            models.CheckConstraint(
                condition=~Q(status="verified") | Q(verified_at__isnull=False),
                name="endpoint_verified_has_time",
            ),
            _choices_check("status", EndpointStatus, "endpoint_status_valid"),
        ]
        indexes = [
            models.Index(fields=["org", "market", "status"], name="endpoint_org_market_status")
        ]

    def __str__(self) -> str:
        return f"{self.org} @ {self.market}: {self.base_url}"

    @property
    def is_verified(self) -> bool:
        return self.status == self.Status.VERIFIED


class Order(models.Model):
    Side = Side
    Type = OrderType
    TimeInForce = TimeInForce
    SelfTradePrevention = SelfTradePrevention
    Status = OrderStatus

    LIVE_STATUSES = (Status.PENDING, Status.OPEN)

    # No index of their own: order_org_recent (org, -id) and order_market_status_id (market,
    # status, id) start with them and serve every lookup by org or market, and the engine
    # rewrites each order row at least once, paying for every index on it.
    org = models.ForeignKey(
        "accounts.Org", on_delete=models.PROTECT, related_name="orders", db_index=False
    )
    market = models.ForeignKey(
        Market, on_delete=models.PROTECT, related_name="orders", db_index=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=6, choices=Type.choices, default=Type.LIMIT)
    tif = models.CharField(max_length=3, choices=TimeInForce.choices, default=TimeInForce.GTC)
    post_only = models.BooleanField(default=False)
    stp = models.CharField(
        max_length=12,
        choices=SelfTradePrevention.choices,
        default=SelfTradePrevention.EXPIRE_TAKER,
    )
    price_micro = models.BigIntegerField(
        null=True, blank=True, help_text="Limit, micro-USD per 1M billable tokens; none for market."
    )
    lots = models.PositiveIntegerField(help_text="Ordered lots, less any reduced.")
    filled_lots = models.PositiveIntegerField(default=0)
    reduced_lots = models.PositiveIntegerField(default=0, help_text="Taken off by reduce.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reject_reason = models.CharField(max_length=64, blank=True)
    hold_micro = models.BigIntegerField(default=0, help_text="Set aside for a bid; 0 for asks.")
    # NULL means "none given": the partial unique constraints below then skip the row.
    client_order_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True, help_text="Set by the engine.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(lots__gt=0) & Q(filled_lots__gte=0) & Q(filled_lots__lte=F("lots")),
                name="order_filled_within_lots",
            ),
            models.CheckConstraint(
                # IS NOT NULL spelled out: a NULL price would make `price_micro > 0` unknown,
                # and a CHECK passes whatever is unknown.
                condition=Q(type="limit", price_micro__isnull=False, price_micro__gt=0)
                | Q(type="market", price_micro__isnull=True, tif__in=["IOC", "FOK"]),
                name="order_price_matches_type",
            ),
            models.CheckConstraint(
                condition=Q(post_only=False) | Q(type="limit", tif="GTC"),
                name="order_post_only_gtc_limit",
            ),
            models.CheckConstraint(
                condition=Q(hold_micro__gte=0) & (Q(side="buy") | Q(hold_micro=0)),
                name="order_hold_only_for_bids",
            ),
            models.CheckConstraint(
                condition=~Q(status="filled") | Q(filled_lots=F("lots")),
                name="order_filled_means_all_lots",
            ),
            models.CheckConstraint(
                condition=Q(status="pending") | Q(status="cancelled") | Q(sequence__isnull=False),
                name="order_processed_has_sequence",
            ),
            _choices_check("side", Side, "order_side_valid"),
            _choices_check("type", OrderType, "order_type_valid"),
            _choices_check("tif", TimeInForce, "order_tif_valid"),
            _choices_check("stp", SelfTradePrevention, "order_stp_valid"),
            _choices_check("status", OrderStatus, "order_status_valid"),
            models.UniqueConstraint(
                fields=["org", "client_order_id"],
                condition=Q(client_order_id__isnull=False),
                name="order_unique_client_order_id",
            ),
            models.UniqueConstraint(
                fields=["org", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="order_unique_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["market", "sequence"],
                condition=Q(sequence__isnull=False),
                name="order_unique_market_sequence",
            ),
        ]
        indexes = [
            # The engine drains pending orders and rebuilds the book from open ones by id.
            models.Index(fields=["market", "status", "id"], name="order_market_status_id"),
            models.Index(fields=["org", "-id"], name="order_org_recent"),
        ]

    def __str__(self) -> str:
        price = "market" if self.price_micro is None else self.price_micro
        return f"order #{self.pk} {self.side} {self.lots}@{price} {self.status}"

    @property
    def remaining_lots(self) -> int:
        return self.lots - self.filled_lots

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE_STATUSES

    @property
    def is_bid(self) -> bool:
        return self.side == self.Side.BUY

    @property
    def hold_reference(self) -> str:
        return f"order:{self.pk}"


class OrderReduction(models.Model):
    """One reduce of an order: how many lots came off, and the client's Idempotency-Key if sent.

    A retry with the same key is answered from here instead of reducing again; the rows are also
    the order's amendment history.
    """

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="reductions")
    by_lots = models.PositiveIntegerField()
    lots_after = models.PositiveIntegerField(help_text="The order's lots after this reduce.")
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(by_lots__gt=0), name="reduction_positive"),
            models.UniqueConstraint(
                fields=["order", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="reduction_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"order #{self.order_id} reduced by {self.by_lots}"


class Trade(models.Model):
    # Indexed only through Meta, where a composite index starts with the key: trade_market_recent
    # and trade_market_time (market), trade_unique_taker_maker (taker order), trade_buyer_recent
    # and trade_seller_recent (the orgs). The engine writes thousands of trades a second, and
    # each index costs every one of them an insert.
    # No foreign-key constraints in the database: the references are checked once per statement
    # by triggers that keep the same rule (core.references; migration 0006).
    market = models.ForeignKey(
        Market, on_delete=models.PROTECT, related_name="trades", db_index=False, db_constraint=False
    )
    taker_order = models.ForeignKey(
        Order,
        on_delete=models.PROTECT,
        related_name="taker_trades",
        db_index=False,
        db_constraint=False,
    )
    maker_order = models.ForeignKey(
        Order, on_delete=models.PROTECT, related_name="maker_trades", db_constraint=False
    )
    buyer_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    seller_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    price_micro = models.BigIntegerField(help_text="The maker's price, micro-USD per 1M tokens.")
    lots = models.PositiveIntegerField()
    tokens = models.BigIntegerField(help_text="lots x the market's lot_tokens.")
    notional_micro = models.BigIntegerField()
    buyer_fee_micro = models.BigIntegerField(default=0)
    seller_fee_bp = models.PositiveIntegerField(
        default=0, help_text="The provider's fee rate, charged on delivered tokens."
    )
    sequence = models.BigIntegerField(help_text="The taker's sequence number.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # A taker meets each resting order at most once, when it arrives.
            models.UniqueConstraint(
                fields=["taker_order", "maker_order"], name="trade_unique_taker_maker"
            ),
            models.CheckConstraint(
                condition=Q(lots__gt=0) & Q(tokens__gt=0) & Q(price_micro__gt=0),
                name="trade_quantities_positive",
            ),
            models.CheckConstraint(
                condition=Q(notional_micro__gte=0) & Q(buyer_fee_micro__gte=0),
                name="trade_money_not_negative",
            ),
            models.CheckConstraint(
                condition=~Q(taker_order=F("maker_order")), name="trade_two_orders"
            ),
        ]
        indexes = [
            models.Index(fields=["market", "-id"], name="trade_market_recent"),
            models.Index(fields=["market", "created_at"], name="trade_market_time"),
            models.Index(fields=["buyer_org", "-id"], name="trade_buyer_recent"),
            models.Index(fields=["seller_org", "-id"], name="trade_seller_recent"),
        ]

    def __str__(self) -> str:
        return f"trade #{self.pk} {self.lots} lots @ {self.price_micro}"
