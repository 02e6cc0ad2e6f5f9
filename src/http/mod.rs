//! The HTTP layer: router, handlers, wire types (caliper's API and KServe V2) and the mapping of
//! every error to a status code and a JSON body. No maths here.
