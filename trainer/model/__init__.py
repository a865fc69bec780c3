"""The geo-aware models in Keras: custom layers (`layers`) and the model kinds on either backbone
(`networks`)."""
