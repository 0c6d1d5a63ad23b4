"""What a connection sees of its node: one service (:mod:`.service`), its
devices (:mod:`.scan`), their usage (:mod:`.usage`) and watchers
(:mod:`.watch`), and the narrow control interface to its serving process
(:mod:`.control`), never the whole server."""
