"""The compact geohash whitelist table (paper eq. 3): which labels have a training observation
within radius θ of a location. One idea per module:

- `codec`: the binary format of docs/whitelist-format.md (header, index, block encodings), both ways;
- `builder`: export time, observations -> table bytes (`build_whitelist`, `write_whitelist`);
- `reader`: what ships to apps, the random-access `WhitelistTable`.
"""
