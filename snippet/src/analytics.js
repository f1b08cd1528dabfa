/*! __LIBRARY_NAME__ __LIBRARY_VERSION__ (placeholder: being written) */
(function () {})();
