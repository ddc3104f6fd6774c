"""The advisor: which inference architecture would have been cheapest for the traffic we had."""
