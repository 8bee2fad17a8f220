"""What the marketplace's REST endpoints share: units on the wire and their limits."""

MAX_LOTS_ON_THE_WIRE = 2_147_483_647  # the column is a 32-bit integer

PRICE_HELP = "USD per 1M billable tokens, a multiple of the market's tick."
