//! UDP sync channels (unicast, multicast) with failover between links.
