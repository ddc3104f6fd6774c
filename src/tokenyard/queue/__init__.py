"""The async track's durable job queue: jobs nobody is waiting on, until a path has answered them."""
