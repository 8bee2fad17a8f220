"""Why an order, a market change or an endpoint was refused. Each code is stable; clients
switch on it."""

from http import HTTPStatus

from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied


class MarketNotFound(NotFound):
    code = "market_not_found"
    default_message = "No such market."


class TierNotFound(NotFound):
    code = "tier_not_found"
    default_message = "No such model tier."


class MarketHalted(Conflict):
    code = "market_halted"
    default_message = "Trading in this market is halted; open orders stay on the book."


class MarketClosed(Conflict):
    code = "market_closed"
    default_message = "This market is closed."


class MarketStatusUnchanged(Conflict):
    code = "market_status_unchanged"
    default_message = "The market cannot move to that status from where it is."


class InvalidOrder(ApplicationError):
    code = "invalid_order"
    default_message = "This combination of order type, time in force and price is not allowed."


class PostOnlyMarketOrder(ApplicationError):
    code = "post_only_market_order"
    default_message = "A market order takes liquidity, so it cannot be post-only."


class PriceOffTick(ApplicationError):
    code = "price_off_tick"
    default_message = "The price is not a multiple of the market's tick."


class PriceOutsideBand(ApplicationError):
    code = "price_outside_band"
    default_message = "The price is outside the market's allowed band."


class LotsBelowMin(ApplicationError):
    code = "lots_below_min"
    default_message = "Fewer lots than the market's minimum."


class LotsAboveMax(ApplicationError):
    code = "lots_above_max"
    default_message = "More lots than the market's maximum."


class NotABuyer(PermissionDenied):
    code = "not_a_buyer"
    default_message = "This organisation is not a buyer, so it cannot bid."


class NotASeller(PermissionDenied):
    code = "not_a_seller"
    default_message = "This organisation is not a provider, so it cannot sell."


class NoVerifiedEndpoint(PermissionDenied):
    code = "no_verified_endpoint"
    default_message = "Asks need a verified endpoint in this market."


class CapacityExceeded(Conflict):
    code = "capacity_exceeded"
    default_message = (
        "This ask would sell more than the declared capacity over the delivery window."
    )


class DuplicateClientOrderId(Conflict):
    code = "duplicate_client_order_id"
    default_message = "An order with this client_order_id already exists."


class OrderNotFound(NotFound):
    code = "order_not_found"
    default_message = "No such order."


class OrderNotLive(Conflict):
    code = "order_not_live"
    default_message = "The order is no longer pending or open."


class InvalidReduce(ApplicationError):
    code = "invalid_reduce"
    default_message = "Reduce by at least one lot and by less than what remains; cancel instead."


class EndpointNotFound(NotFound):
    code = "endpoint_not_found"
    default_message = "No such endpoint."


class ModelNotAdmitted(ApplicationError):
    code = "model_not_admitted"
    default_message = "The market's tier does not admit this model."


class InvalidEndpoint(ApplicationError):
    code = "invalid_endpoint"
    default_message = "The endpoint is not valid."


class DuplicateEndpoint(Conflict):
    code = "duplicate_endpoint"
    default_message = "This organisation already registered this URL in this market."


class EndpointStatusUnchanged(Conflict):
    code = "endpoint_status_unchanged"
    default_message = "The endpoint cannot move to that status from where it is."


class StaffOnly(PermissionDenied):
    code = "staff_only"
    default_message = "Only operators may do this."
    status = HTTPStatus.FORBIDDEN
