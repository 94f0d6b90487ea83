"""Boot Xen on Arm with labgrid and prove what each guest found: grant table and event-channel IRQ."""
