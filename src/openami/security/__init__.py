"""Security library: keystore (envelope encryption), counters, and later pki, signing, audit, policy."""
