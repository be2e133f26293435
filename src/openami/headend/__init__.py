"""Head-end: device registry, DLMS sessions, collection scheduler, on-demand reads."""
