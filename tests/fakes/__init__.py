"""Local fakes of remote services, served over real loopback HTTP for tests."""
