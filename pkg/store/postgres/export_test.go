package postgres

// Notify is notify, for the tests of the package's external test package.
var Notify = notify
