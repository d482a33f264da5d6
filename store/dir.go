package store

// DBFile is the name of the bbolt file inside a daemon's data directory.
const DBFile = "sgsim.db"
