"""Pure, jittable compression functions over Flax parameter pytrees."""
