"""Building latent datasets: the writer and its repair, conversion of videos and arrays, Crafter recording,
and the built-in worlds (generation, object locator, oracle).
"""
