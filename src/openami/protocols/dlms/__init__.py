"""DLMS/COSEM: A-XDR, ACSE, xDLMS, Security Suite 0, COSEM objects, IEC 62056-47 wrapper."""
