"""Device lifecycle: register, provision, flash, update over the air, and the broker's users and ACL."""
