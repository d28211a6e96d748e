"""The machine: the CPU kernel level, threads, precision, seeds, ports and library version floors."""
