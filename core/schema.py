"""OpenAPI schema generation tuned to the project's view style.

Views nest their serializers (`OrderPlaceApi.InputSerializer`), so the bare class names collide
across views. Components are named after the view instead: `OrderPlaceInput`, `BalancesOutput`.
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer, direction) -> str:
        cls = serializer if isinstance(serializer, type) else type(serializer)
        outer, _, inner = cls.__qualname__.rpartition(".")
        if not outer:
            return super().get_serializer_name(serializer, direction)
        owner = outer.split(".")[0].removesuffix("Api")
        return owner + inner.removesuffix("Serializer")
