"""A deliberately naive order book: the oracle the stateful test holds `OrderBook` against.

Everything is a plain list of plain dicts, re-sorted on every step; nothing is cached, indexed
or deleted lazily. A fill-or-kill order is decided by really executing it on a copy of the book
and looking at what it traded, so the engine's read-only walk is checked against execution, not
against a second walk. Events come out as the dicts of the wire format.
"""

import copy

ORDER_SIDES = ("buy", "sell")
ORDER_TYPES = ("limit", "market")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
STP_MODES = ("expire_taker", "expire_maker", "expire_both", "none")


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rejection_reason(order: dict) -> str | None:
    """The submit rules in the order the spec gives them (the id is checked before this)."""
    if order["side"] not in ORDER_SIDES:
        return "invalid_side"
    if order["type"] not in ORDER_TYPES:
        return "invalid_type"
    if order["tif"] not in TIME_IN_FORCE:
        return "invalid_tif"
    if order["type"] == "market" and order["tif"] == "GTC":
        return "invalid_tif"
    if order["stp"] not in STP_MODES:
        return "invalid_stp"
    if not _is_whole(order["lots"]) or order["lots"] < 1:
        return "invalid_lots"
    if order["type"] == "limit" and (not _is_whole(order["price"]) or order["price"] < 1):
        return "invalid_price"
    if order["type"] == "market" and order["price"] is not None:
        return "invalid_price"
    if not isinstance(order["post_only"], bool):
        return "invalid_post_only"
    if order["post_only"] and (order["type"] != "limit" or order["tif"] != "GTC"):
        return "invalid_post_only"
    return None


class ModelBook:
    def __init__(self):
        self.resting = []  # dicts: id, org, side, price, lots, seq
        self.known_ids = set()
        self.next_seq = 0

    # What a taker can meet, best first.

    @staticmethod
    def _makers_for(book: list, taker: dict) -> list:
        if taker["side"] == "buy":
            makers = [order for order in book if order["side"] == "sell"]
            if taker["price"] is not None:
                makers = [order for order in makers if order["price"] <= taker["price"]]
            return sorted(makers, key=lambda order: (order["price"], order["seq"]))
        makers = [order for order in book if order["side"] == "buy"]
        if taker["price"] is not None:
            makers = [order for order in makers if order["price"] >= taker["price"]]
        return sorted(makers, key=lambda order: (-order["price"], order["seq"]))

    @staticmethod
    def _remove(book: list, gone: dict) -> None:
        book[:] = [order for order in book if order is not gone]

    def _execute(self, book: list, taker: dict, events: list) -> int:
        """Match taker against book, one maker at a time; return the lots left to rest."""
        remaining = taker["lots"]
        while remaining > 0:
            makers = self._makers_for(book, taker)
            if not makers:
                return remaining
            maker = makers[0]
            if maker["org"] == taker["org"] and taker["stp"] != "none":
                if taker["stp"] == "expire_taker":
                    events.append({"event": "expired", "id": taker["id"], "lots": remaining})
                    return 0
                self._remove(book, maker)
                events.append({"event": "expired", "id": maker["id"], "lots": maker["lots"]})
                if taker["stp"] == "expire_both":
                    events.append({"event": "expired", "id": taker["id"], "lots": remaining})
                    return 0
                continue
            lots = min(remaining, maker["lots"])
            events.append(
                {
                    "event": "trade",
                    "taker": taker["id"],
                    "maker": maker["id"],
                    "price": maker["price"],
                    "lots": lots,
                }
            )
            remaining -= lots
            maker["lots"] -= lots
            if maker["lots"] == 0:
                self._remove(book, maker)
        return remaining

    # Commands

    def submit(self, order: dict) -> list[dict]:
        if order["id"] in self.known_ids:
            return [{"event": "rejected", "id": order["id"], "reason": "duplicate_id"}]
        reason = rejection_reason(order)
        if reason is not None:
            return [{"event": "rejected", "id": order["id"], "reason": reason}]
        if order["post_only"] and self._makers_for(self.resting, order):
            return [{"event": "rejected", "id": order["id"], "reason": "post_only_would_take"}]

        self.known_ids.add(order["id"])
        events = [{"event": "accepted", "id": order["id"]}]
        if order["tif"] == "FOK":
            trial_events = []
            self._execute(copy.deepcopy(self.resting), order, trial_events)
            traded = sum(event["lots"] for event in trial_events if event["event"] == "trade")
            if traded < order["lots"]:
                events.append({"event": "expired", "id": order["id"], "lots": order["lots"]})
                return events
        remaining = self._execute(self.resting, order, events)
        if remaining > 0:
            if order["tif"] == "GTC":
                self.resting.append(
                    {
                        "id": order["id"],
                        "org": order["org"],
                        "side": order["side"],
                        "price": order["price"],
                        "lots": remaining,
                        "seq": self.next_seq,
                    }
                )
                self.next_seq += 1
            else:
                events.append({"event": "expired", "id": order["id"], "lots": remaining})
        return events

    def _find(self, order_id):
        for order in self.resting:
            if order["id"] == order_id:
                return order
        return None

    def cancel(self, order_id) -> list[dict]:
        order = self._find(order_id)
        if order is None:
            return [{"event": "rejected", "id": order_id, "reason": "unknown_order"}]
        self._remove(self.resting, order)
        return [{"event": "cancelled", "id": order_id, "lots": order["lots"]}]

    def reduce(self, order_id, by_lots) -> list[dict]:
        if not _is_whole(by_lots) or by_lots < 1:
            return [{"event": "rejected", "id": order_id, "reason": "invalid_reduce"}]
        order = self._find(order_id)
        if order is None:
            return [{"event": "rejected", "id": order_id, "reason": "unknown_order"}]
        order["lots"] = max(0, order["lots"] - by_lots)
        if order["lots"] == 0:
            self._remove(self.resting, order)
        return [{"event": "reduced", "id": order_id, "lots": order["lots"]}]

    # Views

    def snapshot(self) -> list[tuple]:
        """(id, org, side, price, lots) in priority order: bids best first, then asks."""
        bids = sorted(
            (order for order in self.resting if order["side"] == "buy"),
            key=lambda order: (-order["price"], order["seq"]),
        )
        asks = sorted(
            (order for order in self.resting if order["side"] == "sell"),
            key=lambda order: (order["price"], order["seq"]),
        )
        return [
            (order["id"], order["org"], order["side"], order["price"], order["lots"])
            for order in bids + asks
        ]
